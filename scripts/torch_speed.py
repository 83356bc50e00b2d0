#!/usr/bin/env python3
"""PyTorch's side of scripts/speed-vs-torch.sh: training throughput on one CPU thread of exactly
Cohort's two models, timed in this thread's CPU time (time.thread_time), not wall time, because
the machine it runs on is shared.

  cnn          McMahan et al.'s CNN (model::net, ModelSpec::cnn): conv5x5(32, padding 2)-ReLU-
               maxpool2-conv5x5(64, padding 2)-ReLU-maxpool2-dense512-ReLU-dense10 on 28x28x1,
               mean cross-entropy, plain SGD (lr 0.05), batch 32. One step: forward, backward,
               optimiser step. Unit: samples/s.
  transformer  model::transformer at layers=4 heads=4 dim=128 context=64, vocabulary 74 (the
               Shakespeare genesis'), batch 12 windows of 64 tokens: token + position embeddings,
               pre-norm blocks (LayerNorm eps 1e-5, qkv Linear(128, 384), causal attention with
               scale 1/sqrt(32), proj, MLP 128-512-128 with tanh GELU), final LayerNorm, head,
               mean next-token cross-entropy, AdamW (betas 0.9/0.99, eps 1e-8, weight decay 0.1
               on matrices and embeddings, 0 on biases and gains; lm::train_lm's). Unit: tokens/s.
               Two attention variants: "manual" (the same ops as Cohort: q k^T, mask, softmax,
               times v) and "sdpa" (torch's fused scaled_dot_product_attention, what nanoGPT uses).

Each line of output: RESULT <impl> <model> <batch> <unit> <rate> <ms per step>. Each figure is the
best of --repeat runs of --steps steps after warm-up steps; inputs are seeded random values (the
speed does not depend on them).
"""

import argparse
import math
import time

import torch
import torch.nn as nn
import torch.nn.functional as F


def cnn():
    return nn.Sequential(
        nn.Conv2d(1, 32, 5, padding=2),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Conv2d(32, 64, 5, padding=2),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Flatten(),
        nn.Linear(64 * 7 * 7, 512),
        nn.ReLU(),
        nn.Linear(512, 10),
    )


class Block(nn.Module):
    def __init__(self, dim, heads, context, sdpa):
        super().__init__()
        self.heads, self.sdpa = heads, sdpa
        self.ln1 = nn.LayerNorm(dim, eps=1e-5)
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)
        self.ln2 = nn.LayerNorm(dim, eps=1e-5)
        self.fc = nn.Linear(dim, 4 * dim)
        self.fc_proj = nn.Linear(4 * dim, dim)
        mask = torch.full((context, context), -1e9).triu(1)
        self.register_buffer("mask", mask)

    def forward(self, x):
        b, t, c = x.shape
        hd = c // self.heads
        qkv = self.qkv(self.ln1(x)).view(b, t, 3, self.heads, hd).permute(2, 0, 3, 1, 4)
        q, k, v = qkv[0], qkv[1], qkv[2]
        if self.sdpa:
            y = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        else:
            att = (q @ k.transpose(-2, -1)) * (1.0 / math.sqrt(hd))
            att = torch.softmax(att + self.mask[:t, :t], dim=-1)
            y = att @ v
        y = y.transpose(1, 2).reshape(b, t, c)
        x = x + self.proj(y)
        return x + self.fc_proj(F.gelu(self.fc(self.ln2(x)), approximate="tanh"))


class Transformer(nn.Module):
    def __init__(self, vocab, layers, heads, dim, context, sdpa):
        super().__init__()
        self.tok_emb = nn.Embedding(vocab, dim)
        self.pos_emb = nn.Embedding(context, dim)
        self.blocks = nn.ModuleList(Block(dim, heads, context, sdpa) for _ in range(layers))
        self.ln_f = nn.LayerNorm(dim, eps=1e-5)
        self.head = nn.Linear(dim, vocab)

    def forward(self, idx):
        t = idx.shape[1]
        x = self.tok_emb(idx) + self.pos_emb(torch.arange(t))
        for b in self.blocks:
            x = b(x)
        return self.head(self.ln_f(x))


def best_of(step, steps, repeat, warmup):
    """Best CPU seconds per step over `repeat` runs of `steps` steps."""
    for _ in range(warmup):
        step()
    best = math.inf
    for _ in range(repeat):
        t0 = time.thread_time()
        for _ in range(steps):
            step()
        best = min(best, (time.thread_time() - t0) / steps)
    return best


def bench_cnn(args):
    torch.manual_seed(1)
    model = cnn()
    opt = torch.optim.SGD(model.parameters(), lr=0.05)
    x = torch.rand(args.cnn_batch, 1, 28, 28)
    y = torch.randint(0, 10, (args.cnn_batch,))

    def step():
        opt.zero_grad(set_to_none=True)
        F.cross_entropy(model(x), y).backward()
        opt.step()

    sec = best_of(step, args.cnn_steps, args.repeat, 3)
    print(f"RESULT pytorch cnn {args.cnn_batch} samples/s {args.cnn_batch / sec:.1f} {sec * 1e3:.2f}")


def bench_lm(args, sdpa):
    torch.manual_seed(1)
    ctx = args.context
    model = Transformer(args.vocab, args.layers, args.heads, args.dim, ctx, sdpa)
    decay = [p for p in model.parameters() if p.dim() == 2]
    plain = [p for p in model.parameters() if p.dim() != 2]
    opt = torch.optim.AdamW(
        [{"params": decay, "weight_decay": 0.1}, {"params": plain, "weight_decay": 0.0}],
        lr=1e-3,
        betas=(0.9, 0.99),
        eps=1e-8,
    )
    data = torch.randint(0, args.vocab, (200_000,))
    gen = torch.Generator().manual_seed(3)

    def step():
        starts = torch.randint(0, len(data) - ctx - 1, (args.lm_batch,), generator=gen)
        xs = torch.stack([data[s : s + ctx] for s in starts])
        ys = torch.stack([data[s + 1 : s + ctx + 1] for s in starts])
        opt.zero_grad(set_to_none=True)
        logits = model(xs)
        F.cross_entropy(logits.view(-1, args.vocab), ys.view(-1)).backward()
        opt.step()

    sec = best_of(step, args.lm_steps, args.repeat, 3)
    tokens = args.lm_batch * ctx
    name = "pytorch-sdpa" if sdpa else "pytorch"
    print(f"RESULT {name} transformer {args.lm_batch} tokens/s {tokens / sec:.1f} {sec * 1e3:.2f}")


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--only", choices=["cnn", "transformer"], help="one model only")
    p.add_argument("--repeat", type=int, default=3)
    p.add_argument("--cnn-batch", type=int, default=32)
    p.add_argument("--cnn-steps", type=int, default=30)
    p.add_argument("--lm-batch", type=int, default=12)
    p.add_argument("--lm-steps", type=int, default=10)
    p.add_argument("--layers", type=int, default=4)
    p.add_argument("--heads", type=int, default=4)
    p.add_argument("--dim", type=int, default=128)
    p.add_argument("--context", type=int, default=64)
    p.add_argument("--vocab", type=int, default=74)
    args = p.parse_args()
    torch.set_num_threads(1)
    torch.set_num_interop_threads(1)
    print(
        f"# torch {torch.__version__}, intra-op threads {torch.get_num_threads()}, "
        f"mkldnn {torch.backends.mkldnn.is_available()}, CPU time of this thread"
    )
    if args.only in (None, "cnn"):
        bench_cnn(args)
    if args.only in (None, "transformer"):
        bench_lm(args, sdpa=False)
        bench_lm(args, sdpa=True)


if __name__ == "__main__":
    main()
