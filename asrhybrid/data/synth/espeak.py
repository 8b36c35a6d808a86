"""eSpeak NG through ctypes, from PyPI's ``espeakng-loader`` (no root, no network).

The library and its voice data ship inside the wheel. We synthesise in
synchronous mode with a callback that collects the samples and the events:
word events and, with ``espeakINITIALIZE_PHONEME_EVENTS``, one event per
phoneme carrying its eSpeak mnemonic and the sample where it starts. Those are
the synthesiser's own timings, our ground truth for alignment accuracy.
Constants are from ``speak_lib.h`` of eSpeak NG 1.52.
"""

from __future__ import annotations

import ctypes
import multiprocessing
import threading
from dataclasses import dataclass

import espeakng_loader
import numpy as np

AUDIO_OUTPUT_SYNCHRONOUS = 2
INITIALIZE_PHONEME_EVENTS = 0x0001
EVENT_LIST_TERMINATED, EVENT_WORD, EVENT_PHONEME = 0, 1, 7
PARAM_RATE, PARAM_PITCH, PARAM_RANGE = 1, 3, 4
SSML_NONE, CHARS_UTF8 = 0, 1


class _EventId(ctypes.Union):
    _fields_ = [("number", ctypes.c_int), ("name", ctypes.c_char_p), ("string", ctypes.c_char * 8)]


class _Event(ctypes.Structure):
    _fields_ = [
        ("type", ctypes.c_int),
        ("unique_identifier", ctypes.c_uint),
        ("text_position", ctypes.c_int),
        ("length", ctypes.c_int),
        ("audio_position", ctypes.c_int),
        ("sample", ctypes.c_int),
        ("user_data", ctypes.c_void_p),
        ("id", _EventId),
    ]


_Callback = ctypes.CFUNCTYPE(ctypes.c_int, ctypes.POINTER(ctypes.c_short), ctypes.c_int, ctypes.POINTER(_Event))


@dataclass
class Synthesis:
    samples: np.ndarray  # int16, at ``sampling_rate``
    sampling_rate: int
    words: list[tuple[str, int, int]]  # (word, start sample, end sample)
    phones: list[tuple[str, int, int]]  # (eSpeak phoneme without stress marks, start, end)


class Espeak:
    """The process-wide eSpeak NG engine (the C library keeps global state)."""

    _instance: "Espeak | None" = None
    _lock = threading.Lock()

    def __init__(self) -> None:
        self._lib = ctypes.CDLL(espeakng_loader.get_library_path())
        self._lib.espeak_Initialize.restype = ctypes.c_int
        self._lib.espeak_TextToPhonemes.restype = ctypes.c_char_p
        rate = self._lib.espeak_Initialize(
            AUDIO_OUTPUT_SYNCHRONOUS, 0, espeakng_loader.get_data_path().encode(), INITIALIZE_PHONEME_EVENTS
        )
        if rate <= 0:
            raise RuntimeError("espeak_Initialize failed (espeakng-loader's data not found?)")
        self.sampling_rate = rate
        self._chunks: list[np.ndarray] = []
        self._events: list[tuple[int, int, int, bytes]] = []
        self._callback = _Callback(self._on_synth)  # keep a reference: C holds the pointer
        self._lib.espeak_SetSynthCallback(self._callback)

    @classmethod
    def get(cls) -> "Espeak":
        with cls._lock:
            if cls._instance is None:
                cls._instance = Espeak()
            return cls._instance

    def _on_synth(self, wav, num_samples, events) -> int:
        if num_samples > 0:
            self._chunks.append(np.ctypeslib.as_array(wav, shape=(num_samples,)).copy())
        i = 0
        while events[i].type != EVENT_LIST_TERMINATED:
            e = events[i]
            if e.type in (EVENT_WORD, EVENT_PHONEME):
                ident = e.id.string if e.type == EVENT_PHONEME else b""
                self._events.append((e.type, e.text_position, e.sample, ident))
            i += 1
        return 0

    def synthesize(self, text: str, voice: str, rate: int, pitch: int, seed: int = 0) -> Synthesis:
        """Speak ``text`` with ``voice`` (e.g. ``en-us+m3``), ``rate`` words/min, ``pitch`` 0-100.

        eSpeak seeds its random generator from the clock; ``seed`` replaces that.
        Its output also depends on what it synthesised before in the same
        process (its wave generator keeps state), so reproducible corpora are
        made in a fresh process with a fixed sequence of calls (``synthesize_in_fresh_process``).
        """
        with self._lock:
            self._lib.espeak_ng_SetRandSeed(ctypes.c_long(seed))
            if self._lib.espeak_SetVoiceByName(voice.encode()) != 0:
                raise ValueError(f"eSpeak has no voice '{voice}'")
            self._lib.espeak_SetParameter(PARAM_RATE, int(rate), 0)
            self._lib.espeak_SetParameter(PARAM_PITCH, int(pitch), 0)
            self._chunks, self._events = [], []
            data = text.encode("utf-8")
            self._lib.espeak_Synth(data, len(data) + 1, 0, 0, 0, CHARS_UTF8, None, None)
            self._lib.espeak_Synchronize()
            samples = np.concatenate(self._chunks) if self._chunks else np.zeros(0, np.int16)
            events = self._events
            timings = _timings(text, events, len(samples), self._phoneme_count)
        return Synthesis(samples, self.sampling_rate, *timings)

    def _phoneme_count(self, word: str) -> int:
        """Phonemes of ``word`` spoken alone, with the current voice (espeak_TextToPhonemes)."""
        buf = ctypes.create_string_buffer(word.encode("utf-8"))
        ptr = ctypes.c_void_p(ctypes.addressof(buf))
        count = 0
        while ptr.value:
            # phonememode bits 8-23: the separator between phoneme names (a space)
            out = self._lib.espeak_TextToPhonemes(ctypes.byref(ptr), CHARS_UTF8, ord(" ") << 8)
            count += len(out.split()) if out else 0
        return count


def _synthesize_all(requests: list[tuple[str, str, int, int, int]]) -> list[Synthesis]:
    return [Espeak.get().synthesize(*r) for r in requests]


class FreshSynthesizer:
    """eSpeak in a newly spawned process of its own, so a sequence of calls gives the same audio every time.

    Use as a context manager; ``synthesize_batch`` keeps the order of the calls.
    """

    def __enter__(self) -> "FreshSynthesizer":
        self._pool = multiprocessing.get_context("spawn").Pool(1)
        return self

    def synthesize_batch(self, requests: list[tuple[str, str, int, int, int]]) -> list[Synthesis]:
        """Each request is (text, voice, rate, pitch, seed)."""
        return self._pool.apply(_synthesize_all, (requests,))

    def __exit__(self, *exc) -> None:
        self._pool.terminate()
        self._pool.join()


def _timings(text: str, events, num_samples: int, phoneme_count):
    """Word and phone intervals from the event stream.

    A phoneme lasts until the next phoneme event; pauses (``_``, ``_:``) are
    silence, not phones. eSpeak joins unstressed function words to their
    neighbour ("from the" gives one word event); such a group's phones are
    split by each word's phoneme count in isolation (``phoneme_count``), or in
    proportion to those counts when reduction changed them.
    """
    phonemes = [
        (pos, sample, ident.decode("ascii", "replace")) for t, pos, sample, ident in events if t == EVENT_PHONEME
    ]
    phones: list[tuple[str, int, int, int]] = []
    for k, (pos, start, symbol) in enumerate(phonemes):
        end = phonemes[k + 1][1] if k + 1 < len(phonemes) else num_samples
        if symbol.startswith("_") or end <= start:
            continue
        phones.append((symbol.lstrip("',"), start, end, pos))

    # Text words with their 1-based character positions (eSpeak's text_position).
    text_words, pos = [], 1
    for word in text.split(" "):
        if word:
            text_words.append((pos, word))
        pos += len(word) + 1
    event_positions = sorted({p for t, p, _, _ in events if t == EVENT_WORD})
    words = []
    for k, pos in enumerate(event_positions):
        nxt = event_positions[k + 1] if k + 1 < len(event_positions) else 10**9
        group = [w for p, w in text_words if pos <= p < nxt]
        mine = [ph for ph in phones if ph[3] == pos]
        if not group or not mine:
            continue
        counts = [phoneme_count(w) for w in group]
        if sum(counts) != len(mine):  # reduced in context: share out in proportion
            scaled = [round(len(mine) * sum(counts[: i + 1]) / sum(counts)) for i in range(len(counts))]
            counts = [b - a for a, b in zip([0] + scaled[:-1], scaled)]
        first = 0
        for word, n in zip(group, counts):
            if n > 0:
                words.append((word, mine[first][1], mine[first + n - 1][2]))
            first += n
    return words, [(s, b, e) for s, b, e, _ in phones]
