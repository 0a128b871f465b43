"""The services layer: every rule of the escalation lifecycle and of jobs lives here."""
