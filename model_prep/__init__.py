"""Model acquisition: from what --model names (a built-in model, a checkpoint directory, a GGUF file, an OpenVINO IR
directory, a hub id) to a local directory in the format a backend reads, prepared once into the cache."""
