# RetinaNet with FPN (mmdet 3.x stock heads; start_level 1, extra convs on input). The backbone is a placeholder:
# replace it with backbone=dict(_delete_=True, type='mmsparse.<Name>', ...) and set neck.in_channels.
_base_ = 'mmdet::_base_/models/retinanet_r50_fpn.py'
model = dict(backbone=dict(init_cfg=None))
