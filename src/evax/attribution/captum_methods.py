"""Baseline attribution methods as thin adapters over Captum (EVA paper, App. E).

Every class has evax's interface -- ``Method(model, **hyper).attribute(inputs, target=None)``
gives ``(N, H, W)`` for images (channels reduced), ``(N, D)`` for flat inputs, and
``attribute_raw`` the input's shape -- and delegates the computation to Captum. ``f`` below is
the logit of the explained class (App. E), ``x0`` a baseline state.

=====================  ========================================================  ==============
class                  g(x)                                                      defaults
=====================  ========================================================  ==============
Saliency               ``|grad_x f(x)|``                                          max-abs over C
GradientInput          ``x * grad_x f(x)``
IntegratedGradients    ``(x - x0) * int_0^1 grad f(x0 + a (x - x0)) da``          x0 = 0, m = 100,
                                                                                  trapezoid rule
SmoothGrad             ``E_{d ~ N(0, s^2 I)} grad f(x + d)``                      m = 100,
                                                                                  s = 0.2 (hi - lo)
VarGrad                ``V_{d ~ N(0, s^2 I)} grad f(x + d)``                      as SmoothGrad
Occlusion              ``f(x) - f(x_[patch = x0])`` painted on the patch         patch = stride =
                                                                                  1/7 of the side
GradCAM                ``max(0, sum_k a_k A^k)``, ``a_k = mean_ij dF/dA^k_ij``,   last conv layer,
                       bilinearly upsampled                                       bilinear
GuidedBackprop         gradient with ReLUs passing only positive gradients
KernelSHAP             Shapley values of the groups (weighted linear regression)  12x12 grid
=====================  ========================================================  ==============

Captum draws its noise (SmoothGrad, VarGrad, KernelSHAP) from torch's *global* RNG. To stay
deterministic without seeding anything global, those calls run inside
:func:`seeded_global_rng`, which forks the global RNG state, seeds the fork from the method's
``seed`` and restores the caller's state afterwards.
"""

from __future__ import annotations

import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from evax import groups as groups_mod
from evax.attribution.base import Attribution, TargetLike, check_inputs, resolve_target
from evax.core.modes import eval_mode
from evax.core.variables import GroupsLike, Variables
from evax.errors import InvalidInputError, MissingDependencyError, NotApplicableError

DEFAULT_GROUPS = groups_mod.grid(12)  # the EVA paper's 12 x 12 grid (immutable)


def _captum_attr() -> Any:
    try:
        import captum.attr as captum_attr
    except ImportError as exc:  # pragma: no cover - captum is a dependency
        raise MissingDependencyError(
            "the Captum baselines need captum: pip install 'captum>=0.7' (keep your torch: "
            "pip install torch==$(python -c 'import torch; print(torch.__version__)') captum)"
        ) from exc
    return captum_attr


@contextmanager
def seeded_global_rng(seed: int, device: torch.device) -> Iterator[None]:
    """Run the block with torch's global RNG seeded by ``seed``, restoring its state after."""
    devices = [device] if device.type == "cuda" else []
    with torch.random.fork_rng(devices=devices):
        torch.manual_seed(seed)
        yield


def cam_layer(model: nn.Module, layer: nn.Module | str | None, method: str) -> nn.Module:
    """The layer whose activations a CAM method uses.

    ``None``: the last ``nn.Conv2d`` of the model (in registration order); if the module
    registered right after it is a non-inplace ``nn.ReLU``, that ReLU -- i.e. the conv layer's
    *activation*, as a Keras ``Conv2D(activation="relu")`` (what Xplique and the paper use).
    A string is a qualified module name (``"features.conv5"``).

    Raises :class:`NotApplicableError` when the model has no convolution (a dense net).
    """
    if isinstance(layer, nn.Module):
        return layer
    if isinstance(layer, str):
        try:
            return model.get_submodule(layer)
        except AttributeError as exc:
            raise InvalidInputError(f"{method}: the model has no layer named {layer!r}") from exc
    if layer is not None:
        raise InvalidInputError(f"{method}: layer must be None, a module name or a module")
    modules = list(model.modules())
    convs = [i for i, m in enumerate(modules) if isinstance(m, nn.Conv2d)]
    if not convs:
        raise NotApplicableError(
            f"{method} needs a convolutional layer and {type(model).__name__} has none (a dense "
            "network): it does not apply to this model"
        )
    i = convs[-1]
    nxt = modules[i + 1] if i + 1 < len(modules) else None
    if isinstance(nxt, nn.ReLU) and not nxt.inplace:
        return nxt
    return modules[i]


def warn_if_flat(shape: tuple[int, ...], method: str) -> None:
    """Warn when the CAM layer's output ``(N, K, h, w)`` is ``1 x 1``: the map is then one
    constant over the image (e.g. the zoo's CIFAR-10 CNN, whose last conv feeds 64 features)."""
    if len(shape) == 4 and shape[2] == 1 and shape[3] == 1:
        warnings.warn(
            f"{method}: the layer's output is 1 x 1, so the map is constant over the image; "
            "pass layer= an earlier convolution for a spatial map",
            stacklevel=3,
        )


def _need_images(inputs: torch.Tensor, method: str) -> None:
    check_inputs(inputs)
    if inputs.ndim != 4:
        raise NotApplicableError(f"{method} needs image inputs (N, C, H, W), got {tuple(inputs.shape)}")


class CaptumAttribution(Attribution):
    """Base class of the Captum adapters: eval mode, targets, checks, detached outputs.

    Subclasses implement :meth:`_captum` (``(inputs, target) -> attributions``).
    """

    name = "captum"

    def __init__(self, model: nn.Module, reduce: str = "sum") -> None:
        super().__init__(model, reduce)
        _captum_attr()

    def _captum(self, inputs: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def attribute_raw(self, inputs: torch.Tensor, target: TargetLike = None) -> torch.Tensor:
        """Attributions with the input's shape (see the module docstring for each method)."""
        check_inputs(inputs)
        with eval_mode(self.model):
            x = inputs.detach().clone()
            tgt = resolve_target(self.model, x, target)
            with warnings.catch_warnings():
                warnings.filterwarnings("ignore", message=".*required_grads has been set automatically.*")
                warnings.filterwarnings("ignore", message=".*Setting backward hooks on ReLU activations.*")
                out = self._captum(x.requires_grad_(), tgt)
        return out.detach()


class Saliency(CaptumAttribution):
    """Saliency (Simonyan et al.): ``|grad_x f(x)|``; channels reduced by the max absolute
    value (Xplique's convention) unless ``reduce`` says otherwise."""

    name = "saliency"

    def __init__(self, model: nn.Module, reduce: str = "max_abs") -> None:
        super().__init__(model, reduce)

    def _captum(self, inputs: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return _captum_attr().Saliency(self.model).attribute(inputs, target=target, abs=True)


class GradientInput(CaptumAttribution):
    """Gradient x Input (Shrikumar et al.): ``x * grad_x f(x)``."""

    name = "gradient_input"

    def _captum(self, inputs: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return _captum_attr().InputXGradient(self.model).attribute(inputs, target=target)


class IntegratedGradients(CaptumAttribution):
    """Integrated Gradients (Sundararajan et al.) from the baseline ``x0``:
    ``(x - x0) * int_0^1 grad f(x0 + a (x - x0)) da`` with ``n_steps`` points and the
    trapezoid rule (the paper: x0 = 0, m = 100): points ``a_j = j / (m - 1)``, weights
    ``1 / (m - 1)`` (half at both ends). Captum's ``riemann_trapezoid`` weights are rescaled to
    that rule (see :meth:`_captum`), so completeness ``sum g = f(x) - f(x0)`` holds exactly on
    a linear model.

    Args:
        baseline: a number or a tensor broadcastable to the inputs.
        n_steps: integration points ``m``.
        method: Captum's integration rule (``"riemann_trapezoid"``; ``"gausslegendre"``...).
        internal_batch_size: forward/backward passes per batch (``None``: all at once).
        multiply_by_inputs: ``True`` (default): IG itself, a *global* attribution;
            ``False``: the path-averaged gradient ``int_0^1 grad f(x0 + a (x - x0)) da``
            without the factor ``x - x0`` (Captum's ``multiply_by_inputs=False``; the *local*
            IG of Yeh et al. 2019). The trapezoid correction applies to both.
    """

    name = "integrated_gradients"

    def __init__(
        self,
        model: nn.Module,
        baseline: float | torch.Tensor = 0.0,
        n_steps: int = 100,
        method: str = "riemann_trapezoid",
        internal_batch_size: int | None = None,
        reduce: str = "sum",
        multiply_by_inputs: bool = True,
    ) -> None:
        super().__init__(model, reduce)
        if isinstance(n_steps, bool) or not isinstance(n_steps, int) or n_steps < 2:
            raise InvalidInputError(f"n_steps must be an int >= 2, got {n_steps!r}")
        if not isinstance(multiply_by_inputs, bool):
            raise InvalidInputError(f"multiply_by_inputs must be a bool, got {multiply_by_inputs!r}")
        self.baseline, self.n_steps, self.method = baseline, n_steps, method
        self.internal_batch_size = internal_batch_size
        self.multiply_by_inputs = multiply_by_inputs

    def _captum(self, inputs: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        attr = (
            _captum_attr()
            .IntegratedGradients(self.model, multiply_by_inputs=self.multiply_by_inputs)
            .attribute(
                inputs,
                baselines=self.baseline,
                target=target,
                n_steps=self.n_steps,
                method=self.method,
                internal_batch_size=self.internal_batch_size,
            )
        )
        if self.method == "riemann_trapezoid":
            # Captum (0.9) evaluates the m points linspace(0, 1, m) but weights them 1/m (1/(2m) at
            # the ends) instead of the spacing 1/(m - 1): every weight is (m - 1)/m of the
            # trapezoid rule's, so the attributions miss a factor m/(m - 1) (1 % at m = 100,
            # visible as a completeness gap on a linear model). Undo it.
            attr = attr * (self.n_steps / (self.n_steps - 1))
        return attr


class _NoiseTunnelGradient(CaptumAttribution):
    """Gradients averaged (SmoothGrad) or their variance (VarGrad) over ``n_samples`` noisy
    copies ``x + d``, ``d ~ N(0, sigma^2 I)``; ``sigma = noise_level * (hi - lo)`` of
    ``input_range`` unless ``sigma`` is given (the paper: m = 100, 0.2 of the input range).
    Seeded with ``seed`` (see the module docstring); ``batch_size`` noisy copies per pass."""

    nt_type = "smoothgrad"

    def __init__(
        self,
        model: nn.Module,
        n_samples: int = 100,
        noise_level: float = 0.2,
        input_range: tuple[float, float] = (0.0, 1.0),
        sigma: float | None = None,
        seed: int = 0,
        batch_size: int | None = 25,
        reduce: str = "sum",
    ) -> None:
        super().__init__(model, reduce)
        if isinstance(n_samples, bool) or not isinstance(n_samples, int) or n_samples < 1:
            raise InvalidInputError(f"n_samples must be a positive int, got {n_samples!r}")
        self.sigma = (
            float(sigma) if sigma is not None else float(noise_level) * (input_range[1] - input_range[0])
        )
        if not self.sigma > 0:
            raise InvalidInputError(f"the noise level must be > 0, got sigma={self.sigma}")
        self.n_samples, self.seed, self.batch_size = n_samples, seed, batch_size

    def _captum(self, inputs: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        ca = _captum_attr()
        tunnel = ca.NoiseTunnel(ca.Saliency(self.model))
        with seeded_global_rng(self.seed, inputs.device):
            return tunnel.attribute(
                inputs,
                nt_type=self.nt_type,
                nt_samples=self.n_samples,
                nt_samples_batch_size=self.batch_size,
                stdevs=self.sigma,
                target=target,
                abs=False,
            )


class SmoothGrad(_NoiseTunnelGradient):
    __doc__ = (
        "SmoothGrad (Smilkov et al.): ``E_d grad f(x + d)``, *signed* (as Xplique, the EVA paper's "
        "stack; ``reduce='abs'`` ranks by magnitude instead).\n\n" + (_NoiseTunnelGradient.__doc__ or "")
    )
    name = "smoothgrad"
    nt_type = "smoothgrad"


class VarGrad(_NoiseTunnelGradient):
    __doc__ = "VarGrad (Adebayo et al.): ``Var_d grad f(x + d)``.\n\n" + (_NoiseTunnelGradient.__doc__ or "")
    name = "vargrad"
    nt_type = "vargrad"


class Occlusion(CaptumAttribution):
    """Occlusion (Zeiler & Fergus): every patch (all channels) is set to ``baseline`` and the
    drop ``f(x) - f(x_[patch = x0])`` is given to its pixels (averaged where patches overlap).

    Args:
        patch: patch side(s) in pixels; ``None``: ``round(side * patch_fraction)``.
        stride: ``None``: the patch (no overlap), as the paper.
        patch_fraction: the paper's 1/7 of the image side.
        baseline: the occlusion value (paper: 0).
        batch_size: occluded copies per forward pass.

    Works for flat inputs ``(N, D)`` too (windows of ``round(D / 7)`` features).
    """

    name = "occlusion"

    def __init__(
        self,
        model: nn.Module,
        patch: int | tuple[int, int] | None = None,
        stride: int | tuple[int, int] | None = None,
        patch_fraction: float = 1 / 7,
        baseline: float = 0.0,
        batch_size: int = 64,
        reduce: str = "sum",
    ) -> None:
        super().__init__(model, reduce)
        self.patch, self.stride, self.patch_fraction = patch, stride, patch_fraction
        self.baseline, self.batch_size = baseline, batch_size

    def windows(self, inputs: torch.Tensor) -> tuple[tuple[int, ...], tuple[int, ...]]:
        """Captum's ``(sliding_window_shapes, strides)`` for ``inputs``."""
        spatial = inputs.shape[2:] if inputs.ndim == 4 else inputs.shape[1:]

        def sides(v: int | tuple[int, ...] | None) -> tuple[int, ...]:
            if v is None:
                return tuple(max(1, round(s * self.patch_fraction)) for s in spatial)
            t = (v,) * len(spatial) if isinstance(v, int) else tuple(v)
            if len(t) != len(spatial) or any(int(a) < 1 for a in t):
                raise InvalidInputError(
                    f"occlusion patch/stride must be positive ints for {len(spatial)} dims"
                )
            return tuple(int(a) for a in t)

        patch = sides(self.patch)
        stride = patch if self.stride is None else sides(self.stride)
        if inputs.ndim == 4:
            c = inputs.shape[1]
            return (c, *patch), (c, *stride)
        return patch, stride

    def _captum(self, inputs: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        window, stride = self.windows(inputs)
        with torch.no_grad():
            return (
                _captum_attr()
                .Occlusion(self.model)
                .attribute(
                    inputs.detach(),
                    sliding_window_shapes=window,
                    strides=stride,
                    baselines=self.baseline,
                    target=target,
                    perturbations_per_eval=self.batch_size,
                )
            )


class GradCAM(CaptumAttribution):
    """Grad-CAM (Selvaraju et al.): ``max(0, sum_k a_k A^k)`` with
    ``a_k = (1/Z) sum_ij df/dA^k_ij`` on the activations ``A`` of ``layer`` (default: the last
    conv layer's activation, see :func:`cam_layer`), bilinearly upsampled to the input size.

    ``attribute`` returns the map ``(N, H, W)``; ``attribute_raw`` repeats it over channels.
    Raises :class:`NotApplicableError` on dense networks and flat inputs.
    """

    name = "gradcam"

    def __init__(self, model: nn.Module, layer: nn.Module | str | None = None, relu: bool = True) -> None:
        super().__init__(model)
        self.layer = cam_layer(model, layer, "Grad-CAM")
        self.relu = relu

    def _captum(self, inputs: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        _need_images(inputs, "Grad-CAM")
        ca = _captum_attr()
        cam = ca.LayerGradCam(self.model, self.layer).attribute(
            inputs, target=target, relu_attributions=self.relu
        )
        if cam.ndim != 4:
            raise NotApplicableError(
                f"Grad-CAM needs a layer with (N, K, h, w) outputs, got {tuple(cam.shape)}"
            )
        warn_if_flat(tuple(cam.shape), "Grad-CAM")
        return F.interpolate(cam, size=inputs.shape[2:], mode="bilinear", align_corners=False)

    def attribute(self, inputs: torch.Tensor, target: TargetLike = None) -> torch.Tensor:
        """The map ``(N, H, W)``."""
        _need_images(inputs, "Grad-CAM")
        return self.attribute_raw(inputs, target)[:, 0]

    def attribute_raw(self, inputs: torch.Tensor, target: TargetLike = None) -> torch.Tensor:
        _need_images(inputs, "Grad-CAM")
        cam = super().attribute_raw(inputs, target)
        return cam.expand(-1, inputs.shape[1], -1, -1)


class GuidedBackprop(CaptumAttribution):
    """Guided Backpropagation (Springenberg et al.): the gradient where every ``nn.ReLU``
    module also zeroes negative gradients. ReLUs must be modules (not ``F.relu``)."""

    name = "guided_backprop"

    def _captum(self, inputs: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        if not any(isinstance(m, nn.ReLU) for m in self.model.modules()):
            raise NotApplicableError("Guided Backprop needs nn.ReLU modules in the model; it has none")
        return _captum_attr().GuidedBackprop(self.model).attribute(inputs, target=target)


class KernelSHAP(CaptumAttribution):
    """KernelSHAP (Lundberg & Lee) on groups of pixels: a weighted linear regression of
    ``f`` over ``n_samples`` random coalitions (absent groups set to ``baseline``).

    Args:
        groups: a grouping (default ``evax.groups.grid(12)``), masks or a label map; for flat
            inputs a grid (the default) or ``None`` means each feature (see
            :mod:`evax.core.variables`).
        n_samples: coalitions per image.
        baseline: value of absent groups.
        batch_size: coalitions per forward pass.
        seed: see the module docstring.

    ``attribute`` returns the per-pixel map ``(N, H, W)`` (each pixel its group's value);
    :meth:`group_scores` the ``(N, G)`` values.
    """

    name = "kernelshap"

    def __init__(
        self,
        model: nn.Module,
        groups: GroupsLike = DEFAULT_GROUPS,
        n_samples: int = 2000,
        baseline: float = 0.0,
        batch_size: int = 256,
        seed: int = 0,
    ) -> None:
        super().__init__(model)
        self.groups, self.n_samples, self.baseline = groups, n_samples, baseline
        self.batch_size, self.seed = batch_size, seed

    def _variables(self, inputs: torch.Tensor) -> Variables:
        groups = self.groups
        if inputs.ndim == 2 and isinstance(groups, groups_mod.grid):
            groups = None  # flat inputs: every feature is a variable
        v = Variables(inputs, groups, group_reduce="mean")
        if v.masks is not None and v._labels is None:
            raise InvalidInputError("KernelSHAP needs non-overlapping groups")
        return v

    def _captum(self, inputs: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        v = self._variables(inputs)
        if v.masks is None:
            mask = torch.arange(v.n_pixels, device=inputs.device).view(1, *inputs.shape[1:])
        else:
            assert v._labels is not None
            mask = v._labels.view(v._labels.shape[0], 1, *v.spatial)
            if inputs.ndim == 2:
                mask = mask[:, 0]
        ks = _captum_attr().KernelShap(self.model)
        outs = []
        with seeded_global_rng(self.seed, inputs.device), torch.no_grad():
            for i in range(inputs.shape[0]):  # Captum fits one regression per example anyway
                m = mask[i if mask.shape[0] > 1 else 0].unsqueeze(0)
                m = torch.unique(m, return_inverse=True)[1]  # ids 0..G'-1 (+ uncovered)
                outs.append(
                    ks.attribute(
                        inputs[i : i + 1].detach(),
                        baselines=self.baseline,
                        target=target[i : i + 1],
                        feature_mask=m,
                        n_samples=self.n_samples,
                        perturbations_per_eval=self.batch_size,
                    )
                )
        return torch.cat(outs)

    def attribute(self, inputs: torch.Tensor, target: TargetLike = None) -> torch.Tensor:
        """Per-pixel map ``(N, H, W)`` (``(N, D)`` for flat inputs)."""
        raw = self.attribute_raw(inputs, target)
        return raw[:, 0] if raw.ndim == 4 else raw

    def group_scores(self, inputs: torch.Tensor, target: TargetLike = None) -> torch.Tensor:
        """Shapley value of each group ``(N, G)``."""
        return self._variables(inputs).scores(self.attribute(inputs, target))
