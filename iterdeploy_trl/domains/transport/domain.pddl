; Transport, as in the IPC-2023 learning track (no action costs): vehicles drive along roads and carry
; packages; (capacity ?v ?s) is the number of free slots, counted with (capacity-predecessor ?s1 ?s2),
; ?s2 = ?s1 + 1. A pick-up takes a slot, a drop frees one.
(define (domain transport)
  (:requirements :typing)
  (:types
    size location locatable - object
    vehicle package - locatable)
  (:predicates
    (road ?l1 ?l2 - location)
    (at ?x - locatable ?v - location)
    (in ?x - package ?v - vehicle)
    (capacity ?v - vehicle ?s1 - size)
    (capacity-predecessor ?s1 ?s2 - size))

  (:action drive
    :parameters (?v - vehicle ?l1 ?l2 - location)
    :precondition (and (at ?v ?l1) (road ?l1 ?l2))
    :effect (and (not (at ?v ?l1)) (at ?v ?l2)))

  (:action pick-up
    :parameters (?v - vehicle ?l - location ?p - package ?s1 ?s2 - size)
    :precondition (and (at ?v ?l) (at ?p ?l) (capacity-predecessor ?s1 ?s2) (capacity ?v ?s2))
    :effect (and (not (at ?p ?l)) (in ?p ?v) (not (capacity ?v ?s2)) (capacity ?v ?s1)))

  (:action drop
    :parameters (?v - vehicle ?l - location ?p - package ?s1 ?s2 - size)
    :precondition (and (at ?v ?l) (in ?p ?v) (capacity-predecessor ?s1 ?s2) (capacity ?v ?s1))
    :effect (and (not (in ?p ?v)) (at ?p ?l) (not (capacity ?v ?s1)) (capacity ?v ?s2))))
