"""x2dfd: explainable deepfake (face forgery) detection with multimodal LLMs (X2-DFD method)."""

__version__ = "0.1.0"
