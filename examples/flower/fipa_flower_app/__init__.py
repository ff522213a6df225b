"""FIPA in Flower: a ServerApp and a ClientApp running one of this pipeline's run configs."""
