"""Growjax and the tools people already use: Hugging Face checkpoints in and out (`hf`),
a checkpoint's params read for a tool (`params_io`), evaluation (`evaluate`,
`lm_eval_adapter`), sampling (`sample`) and `growjax inspect` (`inspect_checkpoint`).
Above the model and the trainer; nothing below imports this wing."""
