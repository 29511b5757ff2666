# Runtime for mmseg configs: mmseg's stock runtime, iteration-based logging/checkpointing, mmsparse registration.
_base_ = 'mmseg::_base_/default_runtime.py'
custom_imports = dict(imports=['mmsparse'], allow_failed_imports=False)
default_scope = 'mmseg'
# RNG states in checkpoints + atomic checkpoint writes: kill -9 and --resume end where an unbroken run ends
custom_hooks = [dict(type='mmsparse.ExactResumeHook')]
