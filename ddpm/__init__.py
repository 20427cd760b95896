"""ddpm: Denoising Diffusion Probabilistic Models (Ho, Jain & Abbeel 2020), one module per idea.

Timesteps are the paper's, t ∈ {1, …, T}, everywhere; index 0 of every schedule array is the clean data.
"""

from . import book  # the chapters' run mode and seeds: ddpm.book.pick, run_mode, seed
from .celeba import CelebA, ImageArray, fake_celeba, preprocess_celeba
from .checkpoint import load_model
from .classifier import (DigitsClassifier, FrechetScale, confidence_and_classes, digit_features,
                         digits_frechet_distance, digits_kid, frechet_reference_scale, train_digits_classifier)
from .data import TOY_2D, digits, get_dataset, toy_2d
from .evaluate import (BitsPerDim, Estimate, PairedBitsPerDim, RateDistortion, bits_per_dim, fid, frechet_distance,
                       frechet_distance_gaussian, kid, kid_difference, noise_prediction_metrics, paired_bits_per_dim, rate_distortion)
from .forward import naive_chain, q_chain, q_sample, q_step
from .guidance import classifier_free_guidance
from .levels import to_model_range, to_uint8
from .loading import Loaded, load
from .likelihood import (VLB, discretized_gaussian_log_likelihood, gaussian_log_likelihood, normal_kl,
                         bound_term_bpd, prior_bpd, vlb)
from .losses import eps_mse_weight, l_simple, l_vlb, variance_mismatch, weighted_eps_mse
from .oracles import GaussianData, GaussianMixture, MemorizingOracle
from .parameterization import PARAMETERIZATIONS, as_eps_model
from .posterior import predict_eps_from_x0, predict_x0_from_eps, q_posterior
from .pretrained import save_pretrained
from .reverse import ReverseStep, p_mean_variance, p_sample
from .sampling import Trajectory, ddim_sample, ddim_step, ddim_timesteps, sample, sample_trajectory
from .schedule import NoiseSchedule
from . import sde  # continuous time: the SDE, the probability-flow ODE, their samplers and likelihood
from .sde import VPSDE
from .train import NonFiniteLossError, TrainConfig, TrainResult  # the loop itself: ddpm.train.train
from .unet import UNet, timestep_embedding

__version__ = "0.1.0"

__all__ = [
    "NoiseSchedule", "q_step", "q_sample", "q_chain", "naive_chain", "q_posterior", "predict_x0_from_eps",
    "predict_eps_from_x0", "ReverseStep", "p_mean_variance", "p_sample", "normal_kl",
    "discretized_gaussian_log_likelihood", "gaussian_log_likelihood", "prior_bpd", "bound_term_bpd", "VLB", "vlb", "l_simple", "l_vlb",
    "eps_mse_weight", "variance_mismatch", "weighted_eps_mse", "sample", "sample_trajectory", "Trajectory",
    "MemorizingOracle", "GaussianData", "GaussianMixture", "ddim_sample", "ddim_step", "ddim_timesteps",
    "TOY_2D", "CelebA", "ImageArray", "digits", "fake_celeba", "get_dataset", "preprocess_celeba", "to_model_range",
    "to_uint8", "toy_2d", "UNet", "timestep_embedding",
    "TrainConfig", "TrainResult", "NonFiniteLossError", "load_model",
    "BitsPerDim", "Estimate", "RateDistortion", "bits_per_dim", "fid", "frechet_distance", "frechet_distance_gaussian",
    "noise_prediction_metrics", "rate_distortion", "DigitsClassifier", "FrechetScale", "digit_features",
    "digits_frechet_distance", "digits_kid", "kid", "kid_difference", "frechet_reference_scale", "train_digits_classifier", "confidence_and_classes",
    "PairedBitsPerDim", "paired_bits_per_dim", "PARAMETERIZATIONS", "as_eps_model",
    "save_pretrained", "load", "Loaded", "sde", "VPSDE", "classifier_free_guidance",
]
