# Semantic FPN (FPN neck + FPNHead), 150 ADE20K classes. The backbone is a placeholder: replace it with
# backbone=dict(_delete_=True, type='mmsparse.<Name>', ...) and set neck.in_channels.
_base_ = 'mmseg::_base_/models/fpn_r50.py'
model = dict(
    pretrained=None,
    data_preprocessor=dict(size=(512, 512)),
    decode_head=dict(num_classes=150))
