#!/usr/bin/python3
"""Generates the PyTorch reference data the tests compare against.

Run with Debian's PyTorch (python3-torch, /usr/bin/python3):  /usr/bin/python3 tests/reference/generate.py
Each case is a folder of .npy files. Inputs are float32 (x, gamma, beta, running_mean, running_var,
dy); references are computed by PyTorch in float64 from those same float32 values:
  y.npy, mean.npy and rstd.npy (the saved statistics, shaped as the statistic axes in NCHW / BTD
  order), running_mean_out.npy and running_var_out.npy (after one training step, momentum 0.1),
  and the gradients of sum(dy * y) by autograd: dx.npy, dgamma.npy, dbeta.npy.
RMSNorm has no PyTorch 1.13 module: its reference is the formula y = gamma * x / sqrt(mean(x^2) + eps)
in float64. The committed files are what the tests read; torch is not needed to run the tests.
"""
import os
import numpy as np
import torch
import torch.nn.functional as F

EPS = 1e-5
MOMENTUM = 0.1
HERE = os.path.dirname(os.path.abspath(__file__))
gen = torch.Generator().manual_seed(20261126)


def randn(*shape, offset=0.0, scale=1.0):
    return (torch.randn(*shape, generator=gen, dtype=torch.float64) * scale + offset).float()


def grads(f, x, g, b, dy):
    """autograd of sum(dy * f(x, g, b)) in float64: (dx, dgamma, dbeta); b may be None."""
    x64 = x.double().requires_grad_()
    g64 = g.double().requires_grad_()
    b64 = b.double().requires_grad_() if b is not None else None
    (f(x64, g64, b64) * dy.double()).sum().backward()
    out = {"dy": dy, "dx": x64.grad, "dgamma": g64.grad}
    if b64 is not None:
        out["dbeta"] = b64.grad
    return out


def save(case, **arrays):
    folder = os.path.join(HERE, case)
    os.makedirs(folder, exist_ok=True)
    for name, a in arrays.items():
        a = a.detach().numpy() if isinstance(a, torch.Tensor) else a
        np.save(os.path.join(folder, name + ".npy"), np.ascontiguousarray(a))


def batch_norm():
    x = randn(4, 6, 5, 7, offset=0.5, scale=2.0)
    g, b = randn(6), randn(6)
    rm, rv = randn(6, scale=0.3), (randn(6).abs() + 0.5)
    rm64, rv64 = rm.double().clone(), rv.double().clone()
    y, mean, rstd = torch.ops.aten.native_batch_norm(x.double(), g.double(), b.double(), rm64, rv64, True, MOMENTUM, EPS)
    dy = randn(*x.shape)
    train_grads = grads(lambda x_, g_, b_: F.batch_norm(x_, rm.double().clone(), rv.double().clone(), g_, b_, training=True,
                                                        momentum=MOMENTUM, eps=EPS), x, g, b, dy)
    save("batch_norm_train", x=x, gamma=g, beta=b, running_mean=rm, running_var=rv, y=y, mean=mean, rstd=rstd,
         running_mean_out=rm64, running_var_out=rv64, **train_grads)
    y_eval = F.batch_norm(x.double(), rm.double(), rv.double(), g.double(), b.double(), training=False, eps=EPS)
    eval_grads = grads(lambda x_, g_, b_: F.batch_norm(x_, rm.double(), rv.double(), g_, b_, training=False, eps=EPS),
                       x, g, b, dy)
    save("batch_norm_eval", x=x, gamma=g, beta=b, running_mean=rm, running_var=rv, y=y_eval,
         mean=rm.double(), rstd=1.0 / torch.sqrt(rv.double() + EPS), **eval_grads)


def layer_norm_cnn():
    x = randn(3, 5, 7, 3, offset=-1.0, scale=0.7)
    g, b = randn(5, 7, 3), randn(5, 7, 3)
    y, mean, rstd = torch.native_layer_norm(x.double(), [5, 7, 3], g.double(), b.double(), EPS)
    dy = randn(*x.shape)
    save("layer_norm_cnn", x=x, gamma=g, beta=b, y=y, mean=mean.reshape(3), rstd=rstd.reshape(3),
         **grads(lambda x_, g_, b_: F.layer_norm(x_, [5, 7, 3], g_, b_, EPS), x, g, b, dy))


def layer_norm(case, rows, tokens, d, offset):
    """transformer LayerNorm over D; the large-offset case is float32 1e4 + N(0,1), where
    E[x^2] - E[x]^2 loses every digit of the variance"""
    x = randn(rows, tokens, d, offset=offset)
    g, b = randn(d), randn(d)
    y, mean, rstd = torch.native_layer_norm(x.double(), [d], g.double(), b.double(), EPS)
    dy = randn(*x.shape)
    save(case, x=x, gamma=g, beta=b, y=y, mean=mean.reshape(rows, tokens), rstd=rstd.reshape(rows, tokens),
         **grads(lambda x_, g_, b_: F.layer_norm(x_, [d], g_, b_, EPS), x, g, b, dy))


def instance_norm():
    x = randn(3, 5, 7, 6, offset=2.0)
    g, b = randn(5), randn(5)
    x64 = x.double()
    y = F.instance_norm(x64, weight=g.double(), bias=b.double(), eps=EPS)
    mean = x64.mean(dim=(2, 3))
    rstd = 1.0 / torch.sqrt(x64.var(dim=(2, 3), unbiased=False) + EPS)
    dy = randn(*x.shape)
    save("instance_norm", x=x, gamma=g, beta=b, y=y, mean=mean, rstd=rstd,
         **grads(lambda x_, g_, b_: F.instance_norm(x_, weight=g_, bias=b_, eps=EPS), x, g, b, dy))


def group_norm(groups):
    x = randn(3, 12, 5, 7, offset=-0.5, scale=1.5)
    g, b = randn(12), randn(12)
    y, mean, rstd = torch.native_group_norm(x.double(), g.double(), b.double(), 3, 12, 35, groups, EPS)
    dy = randn(*x.shape)
    save(f"group_norm_{groups}", x=x, gamma=g, beta=b, y=y, mean=mean, rstd=rstd,
         **grads(lambda x_, g_, b_: F.group_norm(x_, groups, g_, b_, EPS), x, g, b, dy))


def rms_norm():
    x = randn(3, 7, 37, offset=0.5)
    g = randn(37)
    x64 = x.double()
    rstd = 1.0 / torch.sqrt((x64 * x64).mean(dim=-1) + EPS)
    y = x64 * rstd[..., None] * g.double()
    dy = randn(*x.shape)

    def rms(x_, g_, _):
        return x_ * torch.rsqrt((x_ * x_).mean(dim=-1, keepdim=True) + EPS) * g_

    save("rms_norm", x=x, gamma=g, y=y, rstd=rstd, **grads(rms, x, g, None, dy))


if __name__ == "__main__":
    torch.set_default_dtype(torch.float64)
    batch_norm()
    layer_norm_cnn()
    layer_norm("layer_norm", 3, 7, 37, 0.25)
    layer_norm("layer_norm_large_offset", 2, 5, 1031, 1e4)
    instance_norm()
    for groups in (1, 4, 12):
        group_norm(groups)
    rms_norm()
    print("wrote", sorted(d for d in os.listdir(HERE) if os.path.isdir(os.path.join(HERE, d))))
