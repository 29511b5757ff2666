# Runtime for mmdet configs: mmdet's stock runtime plus mmsparse's registration.
_base_ = 'mmdet::_base_/default_runtime.py'
custom_imports = dict(imports=['mmsparse'], allow_failed_imports=False)
default_scope = 'mmdet'
# ExactResumeHook: RNG states in checkpoints + atomic checkpoint writes (kill -9 and --resume end where an
# unbroken run ends). StopOnNonFiniteHook: the first NaN/inf loss term or gradient stops the run before the
# optimizer step, naming the iteration, the terms and the parameters; the last checkpoint stays the good one.
custom_hooks = [dict(type='mmsparse.ExactResumeHook'), dict(type='mmsparse.StopOnNonFiniteHook')]
