# ADE20K (SceneParsing) at data/ade/ADEChallengeData2016 (images/ and annotations/ {training,validation}),
# 512x512 crops, mmseg's stock pipeline (reduce_zero_label=True).
_base_ = 'mmseg::_base_/datasets/ade20k.py'
