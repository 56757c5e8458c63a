"""PiTe-143k-style annotation pipeline: manifest -> noun phrases -> grounding -> tracks -> key trajectories -> shards."""
