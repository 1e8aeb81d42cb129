"""Which units recur across training runs: matched by activation correlation and compared by
representation similarity (CKA), against a baseline that breaks the runs' shared inputs
(`unweave universality TARGET`)."""
