"""Grading a class: every submission of a lesson graded in parallel into nbgrader's gradebook (:mod:`.batch`), and
what the class got wrong (:mod:`.report`, :mod:`.similarity`), from the records the check cells keep
(:mod:`.records`). The same grading on the platforms instructors use: Gradescope's autograder zip
(:mod:`.gradescope`, run there by :mod:`.gradescope_run`) and GitHub Classroom's workflow (:mod:`.classroom`).

The checks, the judge and the sandbox live in the course's ``tests/`` (found by
:func:`ddpm_ref.course.course_root`); this package schedules them and reads what they wrote.
"""
