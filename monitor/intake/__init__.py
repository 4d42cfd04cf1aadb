"""Intake: decoders of what gateways and carers' apps send, validation, dead letters."""
