# Runtime for mmseg configs: mmseg's stock runtime, iteration-based logging/checkpointing, mmsparse registration.
_base_ = 'mmseg::_base_/default_runtime.py'
custom_imports = dict(imports=['mmsparse'], allow_failed_imports=False)
default_scope = 'mmseg'
# ExactResumeHook: RNG states in checkpoints + atomic checkpoint writes (kill -9 and --resume end where an
# unbroken run ends). StopOnNonFiniteHook: the first NaN/inf loss term or gradient stops the run before the
# optimizer step, naming the iteration, the terms and the parameters; the last checkpoint stays the good one.
# tools/test.py --tta wraps the model in mmseg's SegTTAModel (the datasets' tta_pipeline gives the views)
tta_model = dict(type='SegTTAModel')
custom_hooks = [dict(type='mmsparse.ExactResumeHook'), dict(type='mmsparse.StopOnNonFiniteHook')]
