"""Reality: what the hypervisors report, compared with what the kernel wants, and acted on."""
