"""Typed configuration of the annotation pipeline (``configs/pipeline/*.yaml``).

Every section is a plain, picklable dataclass; steps receive their own section only.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from pite.config import option


@dataclass
class ManifestSettings:
    path: str = option(doc="Manifest file: InternVid rows (.jsonl/.csv/.parquet) or VTimeLLM stage-2 JSON.",
                       exists="file")
    video_root: str = option(doc="Folder holding the videos; every video path must resolve inside it.",
                             exists="dir")
    format: Literal["internvid", "vtimellm"] = option("internvid", "Manifest format.")
    filename_pattern: str = option("{video_id}.mp4", "Video file name under video_root; {video_id} is replaced.")
    limit: int | None = option(None, "Only the first N videos (for trials).", ge=1)


@dataclass
class DecodeSettings:
    short_side: int = option(256, "Short side (px) of the frames decoded for grounding and tracking.", ge=16, le=2048)
    track_fps: float = option(10.0, "Frame rate at which an event is decoded for tracking.", gt=0, le=120)
    max_frames_per_event: int = option(100, "Upper bound on decoded frames per event.", ge=2, le=1000)
    backend: Literal["auto", "decord", "pyav"] = option("auto", "Decoder: decord with a PyAV fallback, or one of them.")


@dataclass
class NounPhraseStepSettings:
    parser: str = option("crf-con-en", "SuPar parser: a pretrained name, a local path, or tinykit://parser.",
                         model="parser")
    batch_size: int = option(64, "Captions per parser call.", ge=1)
    drop_pronouns: bool = option(True, "Drop pronoun phrases (he, it, they, ...).")
    stop_phrases: list[str] = option(
        ["front", "the camera", "camera", "the background", "background", "the left", "the right", "the side",
         "the middle", "the top", "the bottom", "the end", "the beginning", "the day", "the night", "night",
         "time", "the moment", "a moment", "the video", "the screen", "the scene", "the view", "the distance"],
        "Lower-case non-object phrases to drop: a phrase is dropped when it, or it without its leading "
        "determiner, equals one of these.")
    max_words: int = option(8, "Drop phrases longer than this many words.", ge=1)


@dataclass
class GroundingSettings:
    backend: str = option(
        "gdino_sam", "Grounder: gdino_sam (GroundingDINO boxes, then SAM masks), gdino_box (box-shaped masks, "
        "no SAM), or another registered in pipeline.grounding.GROUNDERS.")
    detector: str = option("IDEA-Research/grounding-dino-tiny",
                           "GroundingDINO weights: HF repo id, local folder, or tinykit://gdino.", model="gdino")
    sam_checkpoint: str = option("", "segment-anything checkpoint (.pth) or tinykit://sam.", model="sam")
    sam_model_type: Literal["vit_h", "vit_l", "vit_b"] = option("vit_h", "segment-anything architecture.")
    box_threshold: float = option(0.35, "Minimum phrase score of a box (max over the phrase's tokens; see "
                                  "pipeline.grounding.gdino_sam).", ge=0, le=1)
    text_threshold: float = option(0.25, "Minimum phrase token score (matters only above box_threshold).",
                                   ge=0, le=1)
    min_area_frac: float = option(0.002, "Drop masks smaller than this fraction of the frame.", ge=0, lt=1)
    device: str = option("auto", "auto, cpu, cuda or cuda:N.")


@dataclass
class TrackingSettings:
    """The tracker's user-facing knobs; everything else keeps ``pipeline.tracking.TrackerSettings``'s
    defaults, which are tuned on the tracking benchmark (``bench/tracking_bench.py``)."""

    backend: str = option("dis_layers", "Dense tracker: dis_layers (long-range, the benchmark's best within "
                          "3 s/video), dis_chain (chained DIS), raft (needs raft_weights).")
    short_side: int = option(256, "Working resolution (short side, px) of the tracker.", ge=16, le=1024)
    dis_preset: Literal["ultrafast", "fast", "balanced", "medium"] | None = option(
        None, "OpenCV DIS preset of the forward flow; null: the backend's own choice.")
    fb_threshold: float = option(1.0, "Forward-backward consistency threshold (px) for occlusion.", gt=0)
    raft_weights: str = option("", "Local torchvision RAFT weights (.pth) for the raft backend.", model="raft")
    raft_model: Literal["raft_small", "raft_large"] = option("raft_small", "torchvision RAFT architecture.")
    device: str = option("auto", "auto, cpu, cuda or cuda:N (learned backends only).")


@dataclass
class KeyTrajectorySettings:
    num_trajectories: int = option(3, "Key trajectories per object (P).", ge=1, le=16)
    min_visible_frac: float = option(0.5, "Keep tracks visible in at least this fraction of event frames.",
                                     ge=0, le=1)
    max_points: int = option(4000, "Subsample kept tracks to at most this many before k-means++.", ge=3)
    seed: int = option(0, "Seed of k-means++ and subsampling.")


@dataclass
class OutputSettings:
    dir: str = option("outputs/annotate", "Output folder: shards, failures, stats.json.")
    videos_per_shard: int = option(100, "Videos per Parquet shard (the unit of resume).", ge=1)
    batch_size: int = option(4, "Videos per step call.", ge=1)
    write_dense_tracks: bool = option(False, "Also write dense tracks per event as compressed side files.")
    overwrite: bool = option(False, "Redo shards that already have a completion marker.")


@dataclass
class StageSettings:
    """One Ray stage: consecutive pipeline steps that run together in one worker process."""

    steps: list[str] = option(doc="Step names, consecutive in pipeline order (decode, nounphrases, grounding, "
                              "tracking, keytracks).")
    actors: int = option(0, "0: run as stateless Ray tasks; N >= 1: a pool of N actors that load the steps' "
                         "models once.", ge=0)
    num_cpus: float = option(1.0, "Logical CPUs per task / actor (fractions allowed).", ge=0)
    num_gpus: float = option(0.0, "GPUs per actor, fractions allowed (0.25: four actors share one GPU).", ge=0)


@dataclass
class RunSettings:
    """Where the pipeline runs; every key but ``executor`` matters to the Ray executor only."""

    executor: Literal["local", "ray"] = option("local", "local: this process, sequential; ray: a Ray cluster.")
    address: str | None = option(None, "Ray cluster: 'auto' (the running one), 'ray://host:10001', or null to "
                                 "start an in-process local Ray.")
    stages: list[StageSettings] = option(
        default_factory=list, doc="Ray stages (see docs/ray.md). Each run of consecutive steps named in no stage "
        "forms one stage of default_actors actors; with no stages, every step runs in one data-parallel pool.")
    default_actors: int = option(0, "Actors of the stages formed by steps named in no stage; 0: one per CPU of "
                                 "the cluster.", ge=0)
    max_retries: int = option(2, "Retries of a batch whose worker died; then its videos fail (worker_died).",
                              ge=0, le=10)
    max_batches_in_flight: int = option(0, "Backpressure: batches between admission and commit; 0: twice the "
                                        "number of workers.", ge=0)
    num_cpus: int | None = option(None, "CPUs of an in-process local Ray (null: all).", ge=1)
    object_store_mb: int | None = option(None, "Object store (MiB) of an in-process local Ray (null: Ray's "
                                         "default).", ge=64)


@dataclass
class PipelineConfig:
    """The whole annotation run."""

    manifest: ManifestSettings
    decode: DecodeSettings = option(default_factory=DecodeSettings)
    nounphrases: NounPhraseStepSettings = option(default_factory=NounPhraseStepSettings)
    grounding: GroundingSettings = option(default_factory=GroundingSettings)
    tracking: TrackingSettings = option(default_factory=TrackingSettings)
    keytracks: KeyTrajectorySettings = option(default_factory=KeyTrajectorySettings)
    output: OutputSettings = option(default_factory=OutputSettings)
    run: RunSettings = option(default_factory=RunSettings)
