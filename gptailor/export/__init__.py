"""Writing a plan out: a Hugging Face checkpoint folder (``hf``), its mergekit YAML (``mergekit``) and its model card (``card``)."""
