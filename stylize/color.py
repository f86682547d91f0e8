"""Original-colour preservation (Gatys, Bethge, Hertzmann & Shechtman 2016).

``luminance``: style transfer on the luminance channel only (the style's luminance first
matched to the content's mean and std); the result's luminance is then combined with the
content's chroma (YIQ), so the output keeps the content's colours exactly.
``histogram``: the style image's colours are matched to the content's mean and covariance
(per image) before its Gram matrices are computed.
All tensors are pixels in 0..255, (3, H, W) or (B, 3, H, W).
"""

from __future__ import annotations

import torch

# RGB -> YIQ (NTSC); rows are Y, I, Q.
_RGB_TO_YIQ = (
    (0.299, 0.587, 0.114),
    (0.595716, -0.274453, -0.321263),
    (0.211456, -0.522591, 0.311135),
)


def rgb_to_yiq(x: torch.Tensor) -> torch.Tensor:
    m = x.new_tensor(_RGB_TO_YIQ)
    return torch.einsum("ij,...jhw->...ihw", m, x)


def yiq_to_rgb(x: torch.Tensor) -> torch.Tensor:
    m = torch.linalg.inv(x.new_tensor(_RGB_TO_YIQ, dtype=torch.float64)).to(x.dtype)
    return torch.einsum("ij,...jhw->...ihw", m, x)


def luminance(x: torch.Tensor) -> torch.Tensor:
    """The luminance repeated on three channels: a grey image the network can read."""
    y = rgb_to_yiq(x)[..., :1, :, :]
    return y.expand_as(x).contiguous()


def match_luminance(style_grey: torch.Tensor, content_grey: torch.Tensor) -> torch.Tensor:
    """Shift/scale the style's luminance to the content's mean and std."""
    s_mu, s_sd = style_grey.mean(), style_grey.std().clamp_min(1e-6)
    return (style_grey - s_mu) * (content_grey.std() / s_sd) + content_grey.mean()


def combine_luminance(stylized: torch.Tensor, content: torch.Tensor) -> torch.Tensor:
    """Luminance of ``stylized`` with the chroma (I, Q) of ``content``."""
    y = rgb_to_yiq(stylized)[..., :1, :, :]
    iq = rgb_to_yiq(content)[..., 1:, :, :]
    return yiq_to_rgb(torch.cat([y, iq], dim=-3))


def match_histogram(style: torch.Tensor, content: torch.Tensor) -> torch.Tensor:
    """Affine colour transfer: the style's pixel mean/covariance become the content's."""
    s = style.reshape(3, -1).double()  # (3, Ns)
    c = content.reshape(3, -1).double()  # (3, Nc)
    s_mu, c_mu = s.mean(1, keepdim=True), c.mean(1, keepdim=True)
    eye = torch.eye(3, dtype=torch.float64, device=s.device) * 1e-5
    s_cov = torch.cov(s) + eye
    c_cov = torch.cov(c) + eye
    a = torch.matmul(_sqrtm(c_cov), torch.linalg.inv(_sqrtm(s_cov)))  # (3, 3)
    out = torch.matmul(a, s - s_mu) + c_mu
    return out.reshape(style.shape).to(style.dtype).clamp(0, 255)


def _sqrtm(m: torch.Tensor) -> torch.Tensor:
    vals, vecs = torch.linalg.eigh(m)
    return torch.matmul(torch.matmul(vecs, torch.diag(vals.clamp_min(0).sqrt())), vecs.T)
