"""Sub-commands of ``hdr-service``, one module each (see ``service.cli``)."""
