"""After training: embed with the target encoder, reduce, cluster without k, score, report."""
