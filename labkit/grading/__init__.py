"""The instructor's side: grade a class's notebooks with hidden tests (``labkit grade``).

**The trust boundary.** Three places hold three kinds of knowledge, and nothing crosses
between them but data:

* the **grader's process** holds the references (the solution notebook's functions and the
  lab's answer key), the seed and the hidden variants drawn from it, and does every comparison.
  It never runs student code;
* a **worker** (``labkit.worker``, one per submission, contained by ``sandbox``) holds the
  student's definitions and the inputs of the call in progress, and nothing else: its file
  system, processes and memory show no reference, seed, solution, repository, class archive or
  other student's file;
* the **student's kernel** holds the student lab, the public labkit and the recorded answers of
  the notebook's own problems (data, never code).

Inputs go to a worker pickled (models and data only: ``remote.Outbox`` refuses code); what comes
back is plain data (``labkit.plaindata``), capped before it is decoded, and escaped wherever it
is written (``escape``). Time is kept on the grader's clock, memory and processes by control
groups, and everything a worker started ends with it.

One concept per module:

- ``config``      what a run needs to know: the lab, the hidden variants, limits, points.
- ``points``      the instructor's points file (points per exercise and per sub-test).
- ``submissions`` folders and zips of handed-in notebooks, one entry per student, every file
                  and archive entry accounted for.
- ``answers``     the references and mistakes (``answer_keys/labNN.py``), and the answers
                  ``labkit build`` records for the notebooks' own problems.
- ``sandbox``     the workers: zygotes, control groups, uids, ending everything.
- ``remote``      the checks' runner: each call of student code sent to the worker.
- ``scoring``     checks -> scores, variant by variant, in this process.
- ``escape``      student text made safe for markdown, CSV and plain text.
- ``written``     written answers: one review file per question, merged back by hand.
- ``gradebook``   gradebook.csv, per-student feedback and Gradescope results.json.
- ``grader``      the run: resumable, parallel, with a progress bar.
- ``gradescope``  the Gradescope autograder zip and its entry point.
"""
