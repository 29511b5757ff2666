# Runtime for mmdet configs: mmdet's stock runtime plus mmsparse's registration.
_base_ = 'mmdet::_base_/default_runtime.py'
custom_imports = dict(imports=['mmsparse'], allow_failed_imports=False)
default_scope = 'mmdet'
# RNG states in checkpoints + atomic checkpoint writes: kill -9 and --resume end where an unbroken run ends
custom_hooks = [dict(type='mmsparse.ExactResumeHook')]
