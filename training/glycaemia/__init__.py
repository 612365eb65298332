"""Glycaemia-risk model: simglucose cohort, iglu real traces, CGM windows and labels, the LSTM."""
