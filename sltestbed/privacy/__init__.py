"""Privacy attacks on what crosses the cut: how much of a client's data the server can
recover from the (quantized) activations and the label protocol's messages.

Threat model: an honest-but-curious server. It follows the protocol and keeps everything it
receives: per training batch, the payloads of each modality (image and text tokens at the
cut, as quantized codes or raw floats; the server dequantizes them itself), the question
lengths, and what the label protocol sends (the labels themselves with labels at the server;
d loss / d logits with labels at the client; in the U-shaped split, d loss / d output for
its output at the answer position). What it may know besides:
    (a) auxiliary data from the clients' distribution that is in no client's data (a
        "public" slice of the public split, size configurable: `public-size`,
        `scenario.build_scenario(aux_images=)`);
    (b) a base model for the client part, by level: "public-base", one trained on public
        data only; "private-base", the base model split fine-tuning starts from (in the
        Flower runs trained on the clients' data: `after_training.py` says which is which);
    (c) "trained-quantizer": the public base with the client's trained quantizer encoders
        (the learned quantizer's projections; a server that decodes the codes with a decoder
        made for them can be given them): the public-base attacks without the mismatch of
        simulating the codes through the identity projection;
    (d) white-box: the client part's current weights, where the protocol sends them through
        the server (sequential split learning and SplitFed do).
Ground truth is used to score an attack, never by it. An attack's figure is a lower bound on
what leaks: the report's leakage is the best attack per metric, and the information ceiling
bounds it from above.

One attack per module, one interface: an `Observation` (what the server received) and a
`Knowledge` (levels a-d) in, a `Reconstruction`, `InferredTokens` or `InferredLabels` out.
    public        the public images as the server would receive them (simulated codes), and
                  the split of the public images every attack tunes on
    nearest       the nearest public code's image (no training), and the k-nearest mean
    inversion     learned decoders: the inverse network, an MLP and a conv decoder
    optimisation  rMLE (known weights) and UnSplit (surrogate client part)
    text          question tokens: nearest word through the quantizer, or a learned decoder
    labels        labels from d loss / d logits (exact) and from U-shaped gradients
    ceiling       the bits per sample that crossed (entropy coded): what no attack can exceed
    metrics       MSE, PSNR, SSIM, the mean-image baseline, the attack classifier, accuracies
    run           every applicable attack on one observation -> a JSON-able dict; figures
    scenario      a run's data, the victim client, the auxiliary slice and the base model

    from sltestbed.model import TinyLlava
    from sltestbed.privacy import ClientTruth, Knowledge, build_scenario, record_observation, run_attacks

    sc = build_scenario("digits-vqa")
    base = TinyLlava.from_pretrained(sc.base_dir)
    client_model = TinyLlava.from_pretrained(sc.base_dir, quantizer="learned", bits=2)
    obs = record_observation(client_model, sc.client_data, batch_size=64)
    knowledge = Knowledge(aux=sc.aux, base=base, aux_classes=sc.aux_classes)
    report = run_attacks(obs, knowledge, ClientTruth.of(sc.client_data, sc.client_classes))
"""

from .ceiling import information_ceiling
from .code_classifier import code_classifier_inversion
from .inversion import (
                          DECODERS,
                          ConvDecoder,
                          InverseNetwork,
                          InversionBudget,
                          MLPDecoder,
                          learned_inversion,
                          train_decoder,
                          train_inverse_network,
)
from .labels import (
                          infer_labels,
                          labels_from_hidden_grads,
                          labels_from_logit_grads,
                          same_label_pairs,
)
from .metrics import (
                          AttackClassifier,
                          image_scores,
                          mean_image_baseline,
                          mse,
                          psnr,
                          ssim,
                          token_accuracy,
)
from .observation import (
                          ClientTruth,
                          InferredLabels,
                          InferredTokens,
                          Knowledge,
                          Observation,
                          ObservedBatch,
                          Reconstruction,
                          quantizer_state,
                          record_observation,
                          to_pixels,
                          to_unit,
)
from .nearest import knn_mean_inversion, nearest_code_inversion
from .optimisation import OptimisationBudget, rmle_inversion, unsplit_inversion
from .public import PublicCodes, simulate_codes
from .suite import (
                          ATTACKS,
                          figure_reconstructions,
                          run_attacks,
                          save_figure,
                          train_classifier,
)
from .scenario import Scenario, build_scenario
from .tokens import TextBudget, learned_tokens, nearest_tokens, positional_prior

__all__ = [
    "ATTACKS", "AttackClassifier", "ClientTruth", "ConvDecoder", "DECODERS", "InferredLabels", "InferredTokens",
    "InverseNetwork", "MLPDecoder", "PublicCodes", "information_ceiling", "knn_mean_inversion",
    "code_classifier_inversion", "nearest_code_inversion", "simulate_codes", "train_decoder",
    "InversionBudget", "Knowledge", "Observation", "ObservedBatch", "OptimisationBudget", "Reconstruction",
    "Scenario", "TextBudget", "build_scenario", "figure_reconstructions", "image_scores", "infer_labels",
    "labels_from_hidden_grads", "labels_from_logit_grads", "learned_inversion", "learned_tokens",
    "mean_image_baseline", "mse", "nearest_tokens", "positional_prior", "psnr", "record_observation",
    "rmle_inversion", "run_attacks", "same_label_pairs", "save_figure", "ssim", "to_pixels", "to_unit",
    "token_accuracy", "train_classifier", "train_inverse_network", "unsplit_inversion",
]
