"""Training blocks: the one training loop (``loop``), the device mesh (``mesh``), supervised and MAE
pre-training (``pretrain``). Below the learners; above data, eval, models and ops."""
