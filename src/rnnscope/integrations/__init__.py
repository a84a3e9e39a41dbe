"""Integrations with the tools users already train with (DESIGN.md's side layer):
`rnnscope.integrations.lightning` (a Lightning 2.x callback and truncated BPTT) and
`rnnscope.integrations.distributed` (data-parallel training under torchrun)."""
