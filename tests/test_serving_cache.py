"""The serving layer's one cache: an entry answers only for its key, a new key replaces it, the slots are bounded."""

from __future__ import annotations

import threading

import pytest

from lambda_pipeline.serving_layer.cache import ServingCache


class Frame:
    """Stands for a DataFrame: records persist and unpersist."""

    def __init__(self, name: str) -> None:
        self.name, self.persisted = name, False

    def persist(self) -> Frame:
        self.persisted = True
        return self

    def unpersist(self) -> Frame:
        self.persisted = False
        return self


def test_an_entry_answers_only_for_its_key_and_a_new_key_replaces_it() -> None:
    cache = ServingCache(max_slots=4)
    built: list[str] = []

    def build(name: str):
        def made() -> str:
            built.append(name)
            return name

        return made

    assert cache.value("batch", ("path", "id", 1), build("v1")) == "v1"
    assert cache.value("batch", ("path", "id", 1), build("again")) == "v1"
    assert cache.value("batch", ("path", "id", 2), build("v2")) == "v2"
    assert cache.value("batch", ("path", "other id", 2), build("re-created")) == "re-created"
    assert built == ["v1", "v2", "re-created"] and len(cache) == 1


def test_a_replaced_frame_is_unpersisted_and_the_new_one_persisted() -> None:
    cache = ServingCache(max_slots=4)
    old, new = Frame("old"), Frame("new")
    assert cache.frame("speed", 1, lambda: old) is old and old.persisted
    assert cache.frame("speed", 1, lambda: Frame("unused")) is old
    assert cache.frame("speed", 2, lambda: new) is new
    assert new.persisted and not old.persisted


def test_the_slots_are_bounded_and_the_least_recently_used_goes_first() -> None:
    cache = ServingCache(max_slots=2)
    frames = {name: Frame(name) for name in "abc"}
    for name in "ab":
        cache.frame(name, 0, lambda name=name: frames[name])
    cache.frame("a", 0, lambda: Frame("unused"))  # a is used again: b is now the oldest
    cache.frame("c", 0, lambda: frames["c"])
    assert len(cache) == 2
    assert frames["a"].persisted and frames["c"].persisted and not frames["b"].persisted
    assert cache.value("b", 0, lambda: "built anew") == "built anew"


def test_two_threads_building_one_entry_keep_one_and_release_the_other() -> None:
    cache = ServingCache(max_slots=2)
    both_building = threading.Barrier(2, timeout=30)
    made: list[Frame] = []

    def build() -> Frame:
        frame = Frame(f"built {len(made)}")
        made.append(frame)
        both_building.wait()
        return frame

    got: list[object] = []
    threads = [threading.Thread(target=lambda: got.append(cache.frame("slot", 1, build))) for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=30)
    assert len(made) == 2 and got[0] is got[1]
    assert [frame.persisted for frame in made].count(True) == 1


def test_a_cache_holds_at_least_one_slot() -> None:
    with pytest.raises(ValueError, match="at least 1"):
        ServingCache(max_slots=0)
