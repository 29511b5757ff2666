# UPerNet (UPerHead + auxiliary FCNHead), 150 ADE20K classes. The backbone is a placeholder: replace it with
# backbone=dict(_delete_=True, type='mmsparse.<Name>', ...) and set decode_head / auxiliary_head in_channels.
_base_ = 'mmseg::_base_/models/upernet_r50.py'
model = dict(
    pretrained=None,
    data_preprocessor=dict(size=(512, 512)),
    decode_head=dict(num_classes=150),
    auxiliary_head=dict(num_classes=150))
