"""Tiny classification tasks made in the tests, and a plain training loop (no Trainer: a few steps)."""

import torch

from tests.tinymodels import WORDS


def toy_task(n: int, word: str, seed: int, words: list[str] | None = None) -> tuple[list[str], list[int]]:
    """Sentences of five words; label 1 when ``word`` is among them (half the sentences)."""
    g = torch.Generator().manual_seed(seed)
    pool = [w for w in (words or WORDS) if w != word]
    texts, labels = [], []
    for i in range(n):
        picks = [pool[int(j)] for j in torch.randint(len(pool), (5,), generator=g)]
        if i % 2:
            picks[int(torch.randint(5, (1,), generator=g))] = word
        texts.append(" ".join(picks))
        labels.append(i % 2)
    return texts, labels


def train_classifier(model, tok, texts: list[str], labels: list[int] | torch.Tensor, steps: int, lr: float,
                     seed: int) -> None:
    g = torch.Generator().manual_seed(seed)
    opt = torch.optim.AdamW(model.parameters(), lr=lr)
    model.train()
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny matrices: one thread, no spinning against the other engineers' jobs
    try:
        _steps(model, tok, texts, labels, steps, opt, g)
    finally:
        torch.set_num_threads(threads)
    model.eval()


def _steps(model, tok, texts: list[str], labels: list[int] | torch.Tensor, steps: int, opt, g) -> None:
    for _ in range(steps):
        idx = torch.randint(len(texts), (32,), generator=g).tolist()
        enc = tok([texts[i] for i in idx], padding=True, return_tensors="pt")
        target = labels[idx] if isinstance(labels, torch.Tensor) else torch.tensor([labels[i] for i in idx])
        loss = model(**enc, labels=target).loss
        opt.zero_grad()
        loss.backward()
        opt.step()
