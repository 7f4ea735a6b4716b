"""What runs where student code runs when the instructor grades: a worker process.

A worker holds the student's notebook definitions and nothing else of the course's: no
expected value, no reference, no seed, no other student's file. The grader (``labkit.grading``)
sends it inputs, one call at a time; it sends back what the student's function returned, as
plain data (``labkit.plaindata``).

* ``channel``  length-prefixed frames over a socket, with deadlines on the reading side.
* ``contain``  what a worker does to itself before any student code runs: its own namespaces
               (no view of other processes, no network, a file system that shows only Python
               and labkit), a control group, an unprivileged user, resource limits.
* ``serve``    the notebook's definitions (the Run All rule of ``labkit.notebooks``), then
               answering calls.
* ``zygote``   a warm process (torch imported once) that forks one worker per submission.

All of this ships with the student release on purpose: reading it tells a student how they are
called, and nothing about what the answers are.
"""
