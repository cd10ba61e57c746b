"""cnnlab: train, evaluate and use Keras image classifiers from one YAML file."""

__version__ = "0.1.0"
