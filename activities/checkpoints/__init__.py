"""Checkpoints as first-class citizens: safe inspection, per-tensor digests, compare, compatibility, conversion
and envelope encryption.

One module per format (`torch_format`, `safetensors_format`, `dcp_format`), each reading its files without
executing anything in them; `inspect` picks the format of a store path and streams it; `compare` diffs two
checkpoints tensor by tensor; `compat` judges whether a copy loads on a target worker; `reshard` converts
between DCP, single torch files and safetensors; `sealed` and `kms` encrypt checkpoints under keys the
operator controls. Importing this package imports no torch: the CLI stays fast.

What each format supports (and what it refuses) is the table in `FORMATS` of `activities.checkpoints.inspect`.
"""
