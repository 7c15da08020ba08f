"""The training core's shared machinery: answer metrics, decoding and learning-rate schedules."""
