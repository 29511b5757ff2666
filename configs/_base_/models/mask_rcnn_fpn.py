# Mask R-CNN with FPN (mmdet 3.x stock heads). The backbone is a placeholder: replace it with
# backbone=dict(_delete_=True, type='mmsparse.<Name>', ...) and set neck.in_channels.
_base_ = 'mmdet::_base_/models/mask-rcnn_r50_fpn.py'
model = dict(backbone=dict(init_cfg=None))
