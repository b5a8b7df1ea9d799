"""How good generated images are, measured in their own domain with the dataset's feature network
(``gencls.evaluation.featurenet``):

- FID and KID between generated and real test images in the network's penultimate features
  (torchmetrics' implementations with the network as a custom feature module);
- the classifier score, the Inception-Score analogue exp(E_x KL(p(y|x) || p(y))) with the
  network's softmax (1 = useless, K = every image confidently one of K equally used classes);
- label consistency (class-conditional methods): the share of images generated for class c that
  the network assigns to c, overall and per class;
- CAS (Ravuri & Vinyals 2019): a fresh classifier trained on generated labelled images only, its
  accuracy on the real test set (class-conditional methods).
"""
from __future__ import annotations

import warnings
from typing import Callable

import torch

from gencls.errors import GenclsError
from gencls.evaluation.featurenet import FeatureNet, batched, real_features, train_classifier

KID_SUBSETS = 100
KID_SUBSET_SIZE = 1000


def fid_kid(fnet: FeatureNet, real: torch.Tensor, fake: torch.Tensor, seed: int = 0) -> dict:
    """FID and KID (mean, std over random subsets) between two sets, each images (N, C, H, W) in [0, 1]
    or features (N, num_features) already computed. Deterministic for a fixed ``seed``."""
    from torchmetrics.image.fid import FrechetInceptionDistance
    from torchmetrics.image.kid import KernelInceptionDistance

    real, fake = (x if x.ndim == 2 else fnet.features(x) for x in (real, fake))  # features once for both metrics
    subset = min(KID_SUBSET_SIZE, len(real), len(fake))
    fid = FrechetInceptionDistance(feature=fnet.extractor(), reset_real_features=False)
    with warnings.catch_warnings():  # that KID keeps every feature in memory: at most a few MB here
        warnings.simplefilter("ignore", UserWarning)
        kid = KernelInceptionDistance(feature=fnet.extractor(), subsets=KID_SUBSETS, subset_size=subset,
                                      reset_real_features=False)
    fid.to(fnet.device)
    kid.to(fnet.device)
    with torch.no_grad():
        for metric in (fid, kid):
            for x, is_real in ((real, True), (fake, False)):
                for i in range(0, len(x), 1000):
                    metric.update(x[i : i + 1000].to(fnet.device), real=is_real)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)  # KID draws its subsets with torch.randperm
            kid_mean, kid_std = kid.compute()
        fid_value = fid.compute()
    return {"fid": float(fid_value), "kid": float(kid_mean), "kid_std": float(kid_std), "n_real": len(real),
            "kid_subsets": KID_SUBSETS, "kid_subset_size": subset}


def classifier_score(logits: torch.Tensor, splits: int = 10) -> tuple[float, float]:
    """exp(mean_x KL(p(y|x) || p(y))) on each of ``splits`` consecutive parts; (mean, std) over parts."""
    scores = []
    for part in logits.float().chunk(splits):
        logp = part.log_softmax(1)
        logpy = logp.exp().mean(0).clamp_min(1e-30).log()
        scores.append((logp.exp() * (logp - logpy)).sum(1).mean().exp())
    s = torch.stack(scores)
    return float(s.mean()), float(s.std(unbiased=False)) if len(s) > 1 else 0.0


def label_consistency(predicted: torch.Tensor, intended: torch.Tensor, classes: list[str]) -> dict:
    """Share of images meant as class c that are predicted as c: overall and per class."""
    predicted, intended = predicted.cpu().long(), intended.cpu().long()
    hit = (predicted == intended).float()
    per_class = {c: float(hit[intended == k].mean()) if (intended == k).any() else None for k, c in enumerate(classes)}
    return {"label_consistency": float(hit.mean()), "label_consistency_per_class": per_class}


def classification_accuracy_score(x_gen: torch.Tensor, y_gen: torch.Tensor, x_test: torch.Tensor, y_test: torch.Tensor,
                                  num_classes: int, epochs: int = 5, seed: int = 0,
                                  device: torch.device | str = "cpu") -> dict:
    """CAS: train the feature network's architecture and recipe on generated images only, test on real."""
    device = torch.device(device)
    net = train_classifier(x_gen.to(device).float(), y_gen.to(device).long(), num_classes, epochs=epochs, seed=seed)
    pred = batched(lambda b: net(b).argmax(1), x_test.float(), device=device).long()
    hit = (pred == y_test.cpu()).float()
    return {"cas": float(hit.mean()),
            "cas_per_class": {str(k): float(hit[y_test == k].mean()) for k in range(num_classes)}}


def generation_report(method, classes: list[str], fnet: FeatureNet, dataset: str, data_root=None, n: int = 10000,
                      seed: int = 0, cas_epochs: int = 5, log: Callable[[str], None] = print, image_size=None,
                      channels: int | None = None, folder_test_rule: int | None = None) -> dict:
    """All the generation metrics of a trained ``method`` on ``n`` images generated with ``seed``.

    Class-conditional methods generate every class in turn (balanced); the others unconditionally,
    and report label consistency and CAS as not applicable. The real images are ``dataset``'s test
    split converted by ``image_size``, ``channels`` and ``folder_test_rule`` (as the run's data).
    """
    spec = dict(image_size=image_size, channels=channels, folder_test_rule=folder_test_rule)
    if tuple(method.image_shape) != tuple(fnet.info["image_shape"]):
        raise GenclsError(f"the model makes {'x'.join(map(str, method.image_shape))} images, the feature network "
                          f"takes {'x'.join(map(str, fnet.info['image_shape']))}")
    from gencls.data import load_split

    k = len(classes)
    conditional = bool(method.can_condition)
    labels = torch.arange(n) % k if conditional else None
    gen = torch.Generator(device=method.device).manual_seed(seed)
    images = []
    for i in range(0, n, 500):
        lab = labels[i : i + 500].to(method.device) if conditional else None
        images.append(method.generate(min(500, n - i), labels=lab, generator=gen).float().cpu())
    x_gen = torch.cat(images)
    log(f"generated {n} images (seed {seed}); measuring them with the {dataset} feature network")

    f_real, y_real = real_features(fnet, dataset, data_root, log=log, **spec)
    f_gen = fnet.features(x_gen)
    report = {"n": n, "seed": seed, "conditional": conditional,
              "feature_net": {k2: fnet.info[k2] for k2 in ("file", "sha256", "test_accuracy")},
              **fid_kid(fnet, f_real, f_gen, seed=seed)}
    logits_gen = fnet.logits_from_features(f_gen)
    report["classifier_score"], report["classifier_score_std"] = classifier_score(logits_gen)
    report["classifier_score_real_test"] = classifier_score(fnet.logits_from_features(f_real))[0]
    if conditional:
        report.update(label_consistency(logits_gen.argmax(1), labels, classes))
        test = load_split(dataset, "test", data_root, log, **spec)
        log(f"CAS: training a classifier on the {n} generated images ({cas_epochs} epoch{'s' if cas_epochs != 1 else ''})")
        cas = classification_accuracy_score(x_gen, labels, test.images.float().div_(255), test.labels, k,
                                            epochs=cas_epochs, seed=seed, device=fnet.device)
        report["cas"] = cas["cas"]
        report["cas_per_class"] = {classes[int(c)]: v for c, v in cas["cas_per_class"].items()}
    else:
        why = f"not applicable: {method.name} cannot generate a chosen class"
        report.update({"label_consistency": None, "label_consistency_per_class": None, "cas": None,
                       "cas_per_class": None, "not_applicable": {"label_consistency": why, "cas": why}})
    return report
