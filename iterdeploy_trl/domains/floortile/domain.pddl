; Floortile as the IPC-2023 learning track defines it (no action costs): robots paint tiles of a grid from
; the tile below (paint_up) or above (paint_down); a painted tile, like a tile with a robot on it, is not
; clear, so no robot can stand on it again. (up ?y ?x): ?y is the tile above ?x; likewise down, right, left.
; The track renamed the IPC-2011 actions (change-color, paint-up, paint-down, up, down, right, left) to
; change_color, paint_up, paint_down, move_up, move_down, move_right, move_left, so that no action shares a
; predicate's name; the predicates and the actions' parameters and effects are IPC-2011's.
(define (domain floortile)
  (:requirements :typing)
  (:types robot tile color - object)
  (:predicates
    (robot-at ?r - robot ?x - tile)
    (up ?x - tile ?y - tile)
    (down ?x - tile ?y - tile)
    (right ?x - tile ?y - tile)
    (left ?x - tile ?y - tile)
    (clear ?x - tile)
    (painted ?x - tile ?c - color)
    (robot-has ?r - robot ?c - color)
    (available-color ?c - color)
    (free-color ?r - robot))

  (:action change_color
    :parameters (?r - robot ?c - color ?c2 - color)
    :precondition (and (robot-has ?r ?c) (available-color ?c2))
    :effect (and (not (robot-has ?r ?c)) (robot-has ?r ?c2)))

  (:action paint_up
    :parameters (?r - robot ?y - tile ?x - tile ?c - color)
    :precondition (and (robot-has ?r ?c) (robot-at ?r ?x) (up ?y ?x) (clear ?y))
    :effect (and (not (clear ?y)) (painted ?y ?c)))

  (:action paint_down
    :parameters (?r - robot ?y - tile ?x - tile ?c - color)
    :precondition (and (robot-has ?r ?c) (robot-at ?r ?x) (down ?y ?x) (clear ?y))
    :effect (and (not (clear ?y)) (painted ?y ?c)))

  (:action move_up
    :parameters (?r - robot ?x - tile ?y - tile)
    :precondition (and (robot-at ?r ?x) (up ?y ?x) (clear ?y))
    :effect (and (not (robot-at ?r ?x)) (robot-at ?r ?y) (not (clear ?y)) (clear ?x)))

  (:action move_down
    :parameters (?r - robot ?x - tile ?y - tile)
    :precondition (and (robot-at ?r ?x) (down ?y ?x) (clear ?y))
    :effect (and (not (robot-at ?r ?x)) (robot-at ?r ?y) (not (clear ?y)) (clear ?x)))

  (:action move_right
    :parameters (?r - robot ?x - tile ?y - tile)
    :precondition (and (robot-at ?r ?x) (right ?y ?x) (clear ?y))
    :effect (and (not (robot-at ?r ?x)) (robot-at ?r ?y) (not (clear ?y)) (clear ?x)))

  (:action move_left
    :parameters (?r - robot ?x - tile ?y - tile)
    :precondition (and (robot-at ?r ?x) (left ?y ?x) (clear ?y))
    :effect (and (not (robot-at ?r ?x)) (robot-at ?r ?y) (not (clear ?y)) (clear ?x))))
