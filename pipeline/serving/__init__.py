"""Online scoring with Ray Serve: the batch job's operator graph behind HTTP (Open Inference Protocol V2)."""
