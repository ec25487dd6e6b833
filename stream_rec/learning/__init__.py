"""Learning beside the stream: the online quality monitor (``drift``: hits of the lists sent, ADWIN
alarms on a drop) and fine-tuning on recent events (``finetune``). The micro-batch only reports to the
monitor; a worker task reads its alarms and starts a fine-tune in a thread, whose new model version
the hot reload picks up.
"""
