"""`spoolbatch serve`: the OpenAI Files and Batches API over the spool (layer 5: store, format, commands)."""
