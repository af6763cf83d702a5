"""Files in and out, shared by every flow: motion files (`motion`), videos (`video`), video manifests
(`manifest`), configs and stage resources (`config`), failure descriptions (`failures`), numpy arrays in Arrow
(`arrow_arrays`, `operator_columns`), and the training-row contract that preprocessing writes and training reads
(`training_rows`, read back by key with `row_reader`).
"""
