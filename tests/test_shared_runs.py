"""ddpm.book.train: chapters of one build share a training run through DDPM_CACHE, and get the networks
that training would have given them."""

import threading

import torch

import ddpm
from ddpm.train import TrainConfig


def config(tmp_path, name, **kw):
    base = dict(data="digits", steps=4, batch_size=8, warmup=2, sample_every=0, checkpoint_every=4,
                log_every=2, seed=3, out_dir=str(tmp_path / name))
    return TrainConfig(**{**base, **kw})


def same_weights(a, b):
    return all(torch.equal(p, q) for p, q in zip(a.state_dict().values(), b.state_dict().values()))


def test_without_a_cache_it_trains_into_out_dir(tmp_path, monkeypatch):
    monkeypatch.delenv("DDPM_CACHE", raising=False)
    result = ddpm.book.train(config(tmp_path, "mine"))
    assert result.out_dir == tmp_path / "mine" and (tmp_path / "mine" / "checkpoint.pt").exists()
    assert len(result.losses) == 4


def test_a_second_chapter_reuses_the_run_and_gets_the_same_networks(tmp_path, monkeypatch):
    monkeypatch.setenv("DDPM_CACHE", str(tmp_path / "cache"))
    first = ddpm.book.train(config(tmp_path, "chapter7"))
    again = ddpm.book.train(config(tmp_path, "chapter10"))   # another out_dir: the same run
    assert len(first.losses) == 4 and again.losses == [], "the second call must not train"
    assert first.out_dir == again.out_dir and first.out_dir.parent == tmp_path / "cache"
    assert again.step == 4 and same_weights(first.model, again.model) and same_weights(first.ema, again.ema)
    # and those are the networks an uncached run trains
    monkeypatch.delenv("DDPM_CACHE")
    alone = ddpm.book.train(config(tmp_path, "alone"))
    assert same_weights(alone.ema, again.ema)


def test_runs_that_differ_in_any_setting_are_not_shared(tmp_path, monkeypatch):
    monkeypatch.setenv("DDPM_CACHE", str(tmp_path / "cache"))
    a = ddpm.book.train(config(tmp_path, "a"))
    b = ddpm.book.train(config(tmp_path, "b", seed=4))
    c = ddpm.book.train(config(tmp_path, "c", lr=1e-3))
    assert len({a.out_dir, b.out_dir, c.out_dir}) == 3 and b.losses and c.losses
    assert not same_weights(a.ema, b.ema)


def test_two_chapters_asking_at_once_train_once(tmp_path, monkeypatch):
    monkeypatch.setenv("DDPM_CACHE", str(tmp_path / "cache"))
    results = {}

    def run(name):
        results[name] = ddpm.book.train(config(tmp_path, name))

    threads = [threading.Thread(target=run, args=(name,)) for name in ("x", "y")]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sorted(len(r.losses) for r in results.values()) == [0, 4], "one trains, the other waits and reuses"
    assert same_weights(results["x"].ema, results["y"].ema)
