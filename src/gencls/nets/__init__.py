"""Network blocks and networks shared by methods."""
from gencls.nets.autoencoder import (ClassConditionalDecoder, ClassConditionalEncoder, balanced_labels, make_mlp,
                                     one_hot)
from gencls.nets.cifar import (ARCHES, ConvNetClassifier, ConvNetGenerator, WNConv2d, WNConvTranspose2d,
                                make_classifier, make_generator, resolve_arch)
from gencls.nets.conv import ConvClassifier, ConvDiscriminator, ConvGenerator
from gencls.nets.ema import EMA
from gencls.nets.layers import BiasOnlyBatchNorm1d, GaussianNoise, NoiseBank, WNLinear, scale_outputs
from gencls.nets.mlp import MLPClassifier, MLPGenerator

__all__ = ["ARCHES", "ConvNetClassifier", "ConvNetGenerator", "WNConv2d", "WNConvTranspose2d", "make_classifier",
           "make_generator", "resolve_arch", "EMA", "BiasOnlyBatchNorm1d", "ClassConditionalDecoder", "ClassConditionalEncoder", "ConvClassifier",
           "ConvDiscriminator", "ConvGenerator", "GaussianNoise", "MLPClassifier", "MLPGenerator", "NoiseBank", "WNLinear", "scale_outputs",
           "balanced_labels", "make_mlp", "one_hot"]
