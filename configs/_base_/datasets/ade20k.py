# ADE20K (SceneParsing) at data/ade/ADEChallengeData2016 (images/ and annotations/ {training,validation}),
# 512x512 crops, mmseg's stock pipeline (reduce_zero_label=True).
_base_ = 'mmseg::_base_/datasets/ade20k.py'

# Multi-scale + flip testing (tools/test.py --tta; the model is wrapped in mmseg's SegTTAModel, which averages
# the softmax of every view at the original size). The authors evaluated ADE20K with mmseg 0.x's
# MultiScaleFlipAug: ratios 0.5-1.75 of the test scale (2048, 512), each with and without a horizontal flip.
# mmseg 1.x's stock tta_pipeline multiplies the *original image* size instead (Resize scale_factor), which is
# another set of sizes; here the ratios multiply the test scale, as the authors' numbers were measured.
img_ratios = [0.5, 0.75, 1.0, 1.25, 1.5, 1.75]
tta_pipeline = [
    dict(type='LoadImageFromFile', backend_args=None),
    dict(
        type='TestTimeAug',
        transforms=[
            [dict(type='Resize', scale=(int(2048 * r), int(512 * r)), keep_ratio=True) for r in img_ratios],
            [dict(type='RandomFlip', prob=0., direction='horizontal'),
             dict(type='RandomFlip', prob=1., direction='horizontal')],
            [dict(type='LoadAnnotations', reduce_zero_label=True)],
            [dict(type='PackSegInputs')]
        ])
]
