"""Three-stage LoRA training of the PiTe model on DeepSpeed.

- ``config.py``         TrainConfig: the typed ``configs/train/*.yaml``.
- ``train.py``          entry point (``pite train``, ``deepspeed --module training.train``).
- ``trainer.py``        build_model -> setup -> fit: the one training loop for all stages.
- ``batches.py``        data order over ranks and epochs, resumable.
- ``ds_config.py``      the DeepSpeed config: ``configs/deepspeed/*.json`` + values from the train config.
- ``lora.py``           LoRA targets found by type, add / merge.
- ``checkpoint.py``     atomic resumable checkpoints (engine state, RNG, data position).
- ``stage_weights.py``  a stage's output folder (LoRA, adapter and heads), the stage chain, reloading.
- ``export.py``         ``pite export``: the merged Hugging Face model folder.
- ``metrics_log.py``    metrics.jsonl, TensorBoard, optional W&B, MFU.
- ``synthetic.py``      generated samples for smoke runs and tests.
- ``data/``             the stage datasets, collator and length-grouped sampler.
"""
