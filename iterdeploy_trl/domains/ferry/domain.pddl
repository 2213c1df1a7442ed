; Ferry, as in the IPC-2023 learning track: one ferry carries one car at a time between locations.
; sail may not go to the location the ferry is already at (a negative precondition).
(define (domain ferry)
  (:requirements :strips :typing :negative-preconditions)
  (:types car location - object)
  (:predicates
    (at-ferry ?l - location)
    (at ?c - car ?l - location)
    (empty-ferry)
    (on ?c - car))

  (:action sail
    :parameters (?from - location ?to - location)
    :precondition (and (at-ferry ?from) (not (at-ferry ?to)))
    :effect (and (not (at-ferry ?from)) (at-ferry ?to)))

  (:action board
    :parameters (?car - car ?loc - location)
    :precondition (and (at ?car ?loc) (at-ferry ?loc) (empty-ferry))
    :effect (and (not (at ?car ?loc)) (not (empty-ferry)) (on ?car)))

  (:action debark
    :parameters (?car - car ?loc - location)
    :precondition (and (on ?car) (at-ferry ?loc))
    :effect (and (not (on ?car)) (at ?car ?loc) (empty-ferry))))
