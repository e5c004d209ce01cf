"""StreamScore's pipeline: specs, the operator graph, the model repository and its Ray runners."""
