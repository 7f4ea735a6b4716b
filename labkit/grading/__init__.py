"""The instructor's side: grade a class's notebooks with hidden tests (``labkit grade``).

One concept per module:

- ``config``      what a run needs to know: the lab, the hidden variants, limits, points.
- ``points``      the instructor's points file (points per exercise and per sub-test).
- ``submissions`` folders and zips of handed-in notebooks, one entry per student; reading
                  notebooks of every malformed kind.
- ``sandbox``     the worker processes that run student code (limits, isolation).
- ``worker``      what runs inside a worker: the notebook's definitions, then every check,
                  recorded as plain data.
- ``scoring``     the comparisons, in the grader's own process: recorded outcomes -> scores.
- ``written``     written answers: one review file per question, merged back by hand.
- ``gradebook``   gradebook.csv, per-student feedback and Gradescope results.json.
- ``grader``      the run: resumable, parallel, with a progress bar.
- ``gradescope``  the Gradescope autograder zip and its entry point.
"""
