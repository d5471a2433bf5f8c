"""XLA execution: a PJRT accelerator for any device type, SPMD with FSDP-style sharding,
and XLA precision. torch_xla is imported only when these are used."""
